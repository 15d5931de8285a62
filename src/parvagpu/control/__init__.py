"""Live adaptation: when to re-plan (`policy`), what the load is (`window`), synthetic load
(`trace`) and the day-long replay of a trace through the policy and the serving model (`replay`)."""
