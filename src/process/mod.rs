//! Plugin info queries and the plugin server supervisor (process issue).
