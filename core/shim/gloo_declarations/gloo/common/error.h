// Declarations only (see ../context.h): ProcessGroupGloo.hpp includes gloo's
// error.h but uses nothing from it in what clipflow compiles.
#pragma once
