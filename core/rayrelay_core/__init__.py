"""rayrelay core: the API models, validation, CRD generation and artifact store.

Light dependencies only (pydantic, PyYAML, boto3, cel-python): the operator image
and `rayrelay validate` use this package without torch or Ray.
"""

__version__ = "0.1.0"
