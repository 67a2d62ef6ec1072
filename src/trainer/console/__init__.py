"""What a person sees on the console: log policy, per-epoch progress, the end-of-run summary, sweep tables."""
