"""Dataset classes that some plugin models need beside RecBole's (registered so that RecBole's ``create_dataset``
picks them by model name)."""
