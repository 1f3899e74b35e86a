// Declarations only (see context.h): ProcessGroupGloo.hpp includes gloo's
// algorithm.h but uses nothing from it in what clipflow compiles.
#pragma once

#include "gloo/context.h"
