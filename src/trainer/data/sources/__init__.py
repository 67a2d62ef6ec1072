"""Dataset sources: one builder per dataset, `cfg.dataset -> DatasetIndex`, named by its config's `source`."""
