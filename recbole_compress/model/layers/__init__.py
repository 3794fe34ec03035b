"""Reusable compression building blocks, each usable under any RecBole backbone and each tested on its own."""
