// Declarations only (see context.h): gloo's build configuration header.
#pragma once
