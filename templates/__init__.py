"""Project templates: a model service per runtime and a third-party runtime plugin."""
