// Declarations only (see ../context.h): gloo's transport types, which
// libtorch's ProcessGroupGloo holds behind shared_ptr and unique_ptr.
#pragma once

namespace gloo {
namespace transport {

class Device;
class UnboundBuffer;

} // namespace transport
} // namespace gloo
