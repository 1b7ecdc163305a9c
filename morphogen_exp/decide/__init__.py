"""From recorded cells to what ships: the decision, the report, the rollout guard."""
