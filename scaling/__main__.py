from scaling.cli.main import app

app(prog_name="scaling")
