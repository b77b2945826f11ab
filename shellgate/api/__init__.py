"""Wire schema of the OpenShell gateway API (openshell.v1.OpenShell) served by shellgate.

The .proto files here mirror the openshell SDK's schema (same packages, names and
field numbers) for the subset shellgate serves; the *_pb2* modules are generated
from them by tools/gen_api.py (`make proto`). Never import these modules into a
process that also imports the openshell SDK: both define the same protobuf
symbols and the default descriptor pool refuses the second.
"""
