from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
NEXT_ALLOWED_FIELD_FIELD_NUMBER: _ClassVar[int]
next_allowed_field: _descriptor.FieldDescriptor
FIRST_ALLOWED_FIELD_FIELD_NUMBER: _ClassVar[int]
first_allowed_field: _descriptor.FieldDescriptor
