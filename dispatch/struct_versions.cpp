#include "dispatch/struct_versions.h"

#include <string>

#include "kvfuse/version.h"

namespace kvfuse::detail {

kvfuse_status check_struct_size(const char* what, const char* type, std::size_t size,
                                std::initializer_list<std::size_t> known) {
    std::size_t newest = 0;
    std::string list;
    for (std::size_t k : known) {
        if (k == size) return KVFUSE_OK;
        newest = k > newest ? k : newest;
        list += (list.empty() ? "" : ", ") + std::to_string(k);
    }
    std::string why = std::string(what) + "->struct_size (" + std::to_string(size) + ") ";
    const std::string init = std::string(type) + "_init";
    if (size == 0)
        why += "is not set: initialise the struct with " + init;
    else if (size > newest)
        why += "is larger than any " + std::string(type) + " this library (kvfuse " KVFUSE_VERSION_STRING
               ") knows: the caller was compiled against a newer kvfuse.h";
    else
        why += "is not the size of any version of " + std::string(type) + " (set it with " + init + ")";
    return fail(KVFUSE_ERROR_STRUCT_SIZE, why + "; sizes known: " + list);
}

}  // namespace kvfuse::detail
