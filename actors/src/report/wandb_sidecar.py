"""clipflow's wandb sidecar: runs the official wandb SDK for a clipflow
training run. Reads one JSON command per line on stdin:

  {"op": "init", "project": ..., "name": ..., "id": ..., "notes": ...,
   "tags": [...], "resume": "auto" or null, "config": {...}, "save": [paths]}
  {"op": "log", "data": {...}, "step": int or null}
  {"op": "finish"}

and answers init and finish with {"ok": op} (or {"error": text}, then exits)
on stdout, which carries nothing else: whatever wandb prints goes to stderr.
End of input without "finish" finishes the run as failed (exit code 1).
"""
import json
import sys

replies = sys.stdout
sys.stdout = sys.stderr


def reply(**fields):
    replies.write(json.dumps(fields) + "\n")
    replies.flush()


try:
    import wandb
except ImportError as error:
    reply(error=f"wandb is not importable by {sys.executable} ({error}): pip install wandb")
    sys.exit(1)


def run_command(command):
    op = command["op"]
    if op == "init":
        wandb.init(
            project=command["project"],
            name=command["name"],
            id=command["id"],
            notes=command["notes"],
            tags=command["tags"],
            resume=command["resume"],
            config=command["config"],
        )
        for path in command["save"]:
            wandb.save(path)
        reply(ok=op)
    elif op == "log":
        wandb.log(command["data"], step=command["step"])
    elif op == "finish":
        wandb.finish()
        reply(ok=op)
    else:
        raise ValueError(f"unknown command {op!r}")


finished = False
for line in sys.stdin:
    command = json.loads(line)
    try:
        run_command(command)
    except Exception as error:  # reported to clipflow, which stops the run
        reply(error=f"wandb.{command.get('op')} failed: {type(error).__name__}: {error}")
        sys.exit(1)
    if command["op"] == "finish":
        finished = True
        break

if not finished and wandb.run is not None:
    wandb.finish(exit_code=1)
