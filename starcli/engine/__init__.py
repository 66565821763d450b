"""The family-independent training engine: plan, loop, run folder, resume state, DDP.

    from starcli.engine import train, describe_run, resume_config
"""

from starcli.engine.distributed import check_launch, launch_command, launch_local
from starcli.engine.loop import TrainingParts, attach_step, build_parts, train
from starcli.engine.plan import RunPlan, describe_run, resume_config

__all__ = ["train", "describe_run", "resume_config", "RunPlan", "check_launch",
           "launch_command", "launch_local", "TrainingParts", "build_parts", "attach_step"]
