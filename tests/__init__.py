"""gradwatch's tests; helpers are imported as ``tests.mlflow_server``, ``tests.postgres``, ..."""
