"""rayrelay workloads: code that runs inside Ray (training, export, serving)."""
