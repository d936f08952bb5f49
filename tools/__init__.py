"""Developer tools (tests, docs): run from the repository root; not installed with hnerv_fast."""
