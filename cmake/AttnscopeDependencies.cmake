# Every third-party package attnscope uses, found once here.
# Build against another LibTorch (e.g. a CUDA build) with -DTorch_DIR=/path/to/libtorch/share/cmake/Torch.

find_package(Threads REQUIRED)
find_package(Torch REQUIRED)
find_package(OpenCV REQUIRED COMPONENTS core imgproc imgcodecs photo)
find_package(HDF5 REQUIRED COMPONENTS C)
find_package(Boost REQUIRED COMPONENTS program_options)
find_package(nlohmann_json 3 REQUIRED)

# LibTorch's exported flags (e.g. the C++11 ABI define) as a target, instead of global flags.
add_library(attnscope_torch INTERFACE)
add_library(attnscope::torch ALIAS attnscope_torch)
target_link_libraries(attnscope_torch INTERFACE ${TORCH_LIBRARIES})
separate_arguments(_torch_cxx_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(attnscope_torch INTERFACE ${_torch_cxx_flags})

add_library(attnscope_hdf5 INTERFACE)
add_library(attnscope::hdf5 ALIAS attnscope_hdf5)
target_include_directories(attnscope_hdf5 SYSTEM INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(attnscope_hdf5 INTERFACE ${HDF5_C_LIBRARIES})
target_compile_definitions(attnscope_hdf5 INTERFACE ${HDF5_DEFINITIONS})
