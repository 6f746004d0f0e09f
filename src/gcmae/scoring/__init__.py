"""What measures features: weighted kNN, the fast linear probe, classification metrics, the report files."""
