"""Pure torch ``nn.Module``s, one per model (never imports anndata). Imported by the model classes."""
