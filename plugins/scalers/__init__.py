"""Built-in scaler plugins: scaling policies and placements."""
