from anomaly.cli import app

app(prog_name="anomaly")
