"""`anomaly review`: the analyst's page for flagged stretches of a scored run, and the verdicts given there."""
