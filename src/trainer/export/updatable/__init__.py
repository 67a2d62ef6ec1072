"""On-device training: UpdatableClassifier.mlmodel (model.py), reading it back (spec.py), measuring it as
the phone would (personalize.py) and the export step that ties them together (export.py)."""
