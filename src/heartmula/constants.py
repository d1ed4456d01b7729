"""Numbers shared by the models and the tools around them."""

FRAME_RATE = 12.5  # code frames per second: one LM frame is one codec code frame, 80 ms of audio
FRAME_MS = 80  # milliseconds of audio per frame (1000 / FRAME_RATE)
