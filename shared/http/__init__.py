"""The one HTTP stack: route declarations with pydantic models, the app factory, problem+json."""
