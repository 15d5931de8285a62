from parvagpu.cli import app

app(prog_name="parvagpu")
