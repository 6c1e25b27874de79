"""Commands that look at films and corpora: probe report, inspect summary, verify, preview,
and the benchmarks of the checks and the disparity backends."""
