"""Using trained models outside the trainer (the decode / evaluate / search / compress commands).

Imports models, data, config, checkpoint_io, device and precision; never train/ or logging/.
"""
