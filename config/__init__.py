"""Node configuration: one TOML file, validated at start."""
