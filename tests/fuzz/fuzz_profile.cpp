// libFuzzer target: the tuning-profile reader (dispatch/tuning.cpp) through the public C API,
// kvfuse_load_profile(path). Any input must give KVFUSE_OK or KVFUSE_ERROR_BAD_PROFILE with a
// reason, never an exception out of the library, an abort or a sanitizer report; a profile that
// loads must hold valid parameters (kvfuse_set_tuning accepts them back).
//
// A profile is trusted only on the machine it was made for, so a mutated profile would never get
// past the machine check here. Inputs may therefore say "@machine" and "@version" (quotes
// included): the target replaces them with this machine's record and this kvfuse's version
// string, as kvfuse_save_profile writes them, so the committed seeds reach the parameter checks
// on any machine.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz_support.h"
#include "kvfuse/kvfuse.h"

namespace {

struct MachineRecord {
    std::string machine_json;  // the "machine" object as JSON text
    std::string version_json;  // "\"0.1.0\""
};

const MachineRecord& machine_record() {
    static const MachineRecord record = [] {
        char path[] = "/tmp/kvfuse-fuzz-profile-XXXXXX";
        const int fd = ::mkstemp(path);
        if (fd < 0) std::abort();
        ::close(fd);
        kvfuse_tuning tuning;
        kvfuse_tuning_init(&tuning);
        kvfuse_default_tuning(&tuning);
        if (kvfuse_save_profile(path, &tuning, nullptr) != KVFUSE_OK) {
            std::fprintf(stderr, "cannot write a reference profile: %s\n", kvfuse_last_error());
            std::abort();
        }
        std::ifstream in(path);
        const nlohmann::json profile = nlohmann::json::parse(in);
        std::remove(path);
        return MachineRecord{profile.at("machine").dump(), profile.at("kvfuse_version").dump()};
    }();
    return record;
}

std::string substitute(std::string text) {
    const MachineRecord& record = machine_record();
    for (const auto& [placeholder, value] :
         {std::pair<std::string, std::string>{"\"@machine\"", record.machine_json}, {"\"@version\"", record.version_json}}) {
        for (std::size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at + value.size()))
            text.replace(at, placeholder.size(), value);
    }
    return text;
}

kvfuse::fuzz::InputFile& input_file() {
    static kvfuse::fuzz::InputFile file;
    return file;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)machine_record();
    (void)input_file();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text = substitute(std::string(reinterpret_cast<const char*>(data), size));
    const std::string& path = input_file().write(reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
    const kvfuse_status status = kvfuse_load_profile(path.c_str());
    if (status == KVFUSE_OK) {
        kvfuse_tuning loaded;
        kvfuse_tuning_init(&loaded);
        kvfuse_get_tuning(&loaded);
        if (kvfuse_set_tuning(&loaded) != KVFUSE_OK)
            kvfuse::fuzz::property_failed("a loaded profile holds invalid parameters", kvfuse_last_error());
        kvfuse_set_tuning(nullptr);  // back to the defaults for the next input
    } else if (status != KVFUSE_ERROR_BAD_PROFILE) {
        kvfuse::fuzz::property_failed("a profile's content gave a status other than BAD_PROFILE",
                                      kvfuse_status_message(status));
    } else if (kvfuse_last_error()[0] == '\0') {
        kvfuse::fuzz::property_failed("a rejected profile without a reason");
    }
    return 0;
}
