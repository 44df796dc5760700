"""The S3 bucket-name rule: a pure pattern, shared by import URIs and RegisterTable locations."""

import re

# An S3 bucket name as AWS and S3-compatible stores accept it (also checked by RegisterTable).
S3_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
