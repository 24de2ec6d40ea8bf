"""Side-by-side performance benchmarks:
`python -m benchmarks [--quick] [--json PATH] [--md PATH] [--only NAME...]`."""
