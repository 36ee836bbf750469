"""The finetune engine: data readers (data), the output directory (outdir), LoRA (lora) and the
Trainer run (trainer). transformers, PEFT and datasets are imported inside functions only."""
