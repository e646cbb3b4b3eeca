"""Temperature-transport flows: coordinates, models (TarFlow, baseline), training, evaluation, swaps."""
