//! Validation of Kong's `pluginserver_*` settings (config issue).
