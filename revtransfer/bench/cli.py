"""`revtransfer bench` and `revtransfer bench-reconstruction`."""
from __future__ import annotations

import click

from revtransfer.options import parse_model_kwargs, parse_positive_ints


@click.command()
@click.option("--model", "model_name", default="revvit_base", show_default=True, help="Registered model name.")
@click.option("--modes", default="backprop,reprop,pareprop", show_default=True, help="Backward modes to compare.")
@click.option("--batch-sizes", default="8,16,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--steps", default=10, show_default=True, help="Timed steps per (mode, batch size).")
@click.option("--warmup", default=3, show_default=True, help="Untimed warm-up steps (each measurement).")
@click.option("--rounds", default=3, show_default=True,
              help="Measure every configuration once per round, interleaved; min / median / max over rounds.")
@click.option("--device", default=None, help="cuda or cpu (default: cuda if available).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="fp32, or autocast to bf16 / fp16 over fp32 weights.")
@click.option("--amp", "amp_alias", type=click.Choice(["none", "bf16", "fp16"]), default=None, hidden=True,
              help="The older spelling of --precision (none = fp32).")
@click.option("--reference", default="auto", show_default=True,
              help="Non-reversible reference model ('auto': the ViT/Swin/MViT of the same size; 'none' to skip).")
@click.option("--seq-len", type=int, default=None, help="Sequence length for language models.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--model-kw", "model_kw", multiple=True, help="Extra model kwarg KEY=VALUE (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the records as JSON here.")
def bench(model_name, modes, batch_sizes, steps, warmup, rounds, device, precision, amp_alias, reference, seq_len,
          threads, model_kw, out):
    """Training-step throughput and memory per backward mode and batch size."""
    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.bench.record import precision_name, records_to_dicts
    from revtransfer.bench.throughput import format_table, round_ratios, run_benchmark
    from revtransfer.provenance import provenance, resolved_command
    from revtransfer.reversible import check_mode

    if amp_alias is not None:
        precision = precision_name(amp_alias)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for m in mode_list:
        try:
            check_mode(m)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--modes") from None
    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reference = None if reference == "none" else reference

    def progress(rec):
        what = "OOM" if rec.status == "oom" else f"{rec.samples_per_s:.1f} samples/s"
        click.echo(f"  {rec.model} {rec.mode} bs={rec.batch_size}: {what}", err=True)

    records, _ = run_benchmark(model_name, mode_list, parse_positive_ints(batch_sizes), steps, warmup, device, precision,
                               reference, parse_model_kwargs(model_kw), seq_len, progress, rounds=rounds)
    ratios = round_ratios(records)
    click.echo(format_table(records))
    for q in ratios:
        click.echo(f"{q['numerator']} / {q['denominator']} at bs {q['batch_size']}: min {q['min']:.3f} "
                   f"median {q['median']:.3f} max {q['max']:.3f} (within rounds)")
    if out:
        meta = provenance(resolved_command(click.get_current_context()))
        meta.update(measure="train_step", precision=precision, torch_threads=torch.get_num_threads(), steps=steps,
                    warmup=warmup, rounds=rounds)
        atomic_write_json(out, {"meta": meta, "ratios": ratios, "records": records_to_dicts(
            records, torch=torch.__version__, git_commit=meta["git_commit"])})
        click.echo(f"wrote {out}")


@click.command("bench-reconstruction")
@click.option("--model", "model_name", default="revvit_base", show_default=True)
@click.option("--depths", default="4,8,16,32,64", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64", "bfloat16"]), default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--model-kw", "model_kw", multiple=True, help="Extra model kwarg KEY=VALUE (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False), default=None)
def bench_reconstruction(model_name, depths, dtype, device, model_kw, out):
    """Input-reconstruction error of a reversible stack vs depth (random init)."""
    import torch

    from revtransfer.atomic import atomic_write_json
    from revtransfer.bench.reconstruction import reconstruction_errors
    from revtransfer.provenance import provenance, resolved_command

    records = reconstruction_errors(model_name, parse_positive_ints(depths), dtype=getattr(torch, dtype), device=device,
                                    model_kwargs=parse_model_kwargs(model_kw))
    for r in records:
        click.echo(f"{r['model']} depth={r['depth']:>3} {r['dtype']}: max relative error {r['max_rel_error']:.3e}")
    if out:
        from revtransfer.bench.record import BenchRecord, records_to_dicts

        meta = dict(provenance(resolved_command(click.get_current_context())), measure="reconstruction")
        atomic_write_json(out, {"meta": meta, "records": records_to_dicts(
            BenchRecord.from_dict(dict(r, precision=r["dtype"]), measure="reconstruction") for r in records)})
        click.echo(f"wrote {out}")
