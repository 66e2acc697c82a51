"""One thin click command per DVC stage: parse params, call the absld library, write the outs."""
