"""How checks run: the check protocol (`protocol`), the registry that finds them (`registry`), the one
on-rank harness (`on_rank`, `rank_steps`) and the dispatch of jobs to launcher calls (`dispatch`)."""
