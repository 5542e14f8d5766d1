"""Hub-side features and operator commands: config, reclaim, dashboard, doctor, auth, guard."""
