"""LazyConfig files of the plugin (``LazyConfig.load`` them by path; see ``detection.config``)."""
