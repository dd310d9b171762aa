"""Shipped model folders (config.json, fp16 safetensors, card.json); found by gptui.core.registry."""
