"""Pure math of the drifting objective: the field and loss (field.py), the feature poolings (features.py)."""
