"""Intent-aware prompts (§4.2): settings and templates (config.py), the prompt builder
shared by training and the nearline worker (builder.py), and the fine-tuning tasks with
the advertiser vocabulary (tasks.py)."""
