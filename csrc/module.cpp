// ecgfast._C: the Python module object of the extension, and the ``ecgfast`` operator namespace.
// Each op's source adds its schema with TORCH_LIBRARY_FRAGMENT(ecgfast, m) and its kernels with
// TORCH_LIBRARY_IMPL(ecgfast, CPU|CUDA, m); importing ecgfast._C registers them all with the dispatcher.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(ecgfast, m) {}

static struct PyModuleDef ecgfast_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ecgfast_c_module); }
