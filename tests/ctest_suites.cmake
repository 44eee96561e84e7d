# Included by ctest before it runs (TEST_INCLUDE_FILES, written by tests/CMakeLists.txt): adds
# one ctest test per GoogleTest suite of one test executable, run as
# `EXE --gtest_filter=SUITE.*`. One process per suite instead of one per test: a process of
# a test executable spends 0.8 s (2.4 s under AddressSanitizer on a slow VM) loading LibTorch
# before its first test, which across 450 tests was a third of the suite's time. Suites whose
# tests measure or change the whole process (its environment, its allocator) are named in
# `per_test` and keep one process, and one ctest test `SUITE.TEST`, per test.
# Suites named Data* get the label `data`, Gpu* the label `gpu`; every suite of the executable
# also gets `label` when one is given (`parsers`, tests/CMakeLists.txt). The list of tests is
# kept in EXE.tests and read again until the executable changes. An executable that is not
# built becomes one test, EXE_NOT_BUILT, that fails.

function(_attnscope_label test label)
  if(NOT label STREQUAL "")
    set_tests_properties("${test}" PROPERTIES LABELS "${label}")
  endif()
endfunction()

function(attnscope_add_gtest_suites exe environment per_test label)
  get_filename_component(_name "${exe}" NAME)
  # Tests that stand for a problem carry the executable's label too (`ctest -L` finds them).
  if(NOT EXISTS "${exe}")
    add_test("${_name}_NOT_BUILT" "${_name}_NOT_BUILT")
    _attnscope_label("${_name}_NOT_BUILT" "${label}")
    return()
  endif()
  set(_list "${exe}.tests")
  if(NOT EXISTS "${_list}" OR "${exe}" IS_NEWER_THAN "${_list}")
    execute_process(COMMAND "${exe}" --gtest_list_tests
                    OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc
                    TIMEOUT 600)
    if(NOT _rc EQUAL 0)
      # A test named after the problem, so the run fails and shows why.
      add_test("${_name}_CANNOT_LIST_ITS_TESTS" "${exe}" --gtest_list_tests)
      _attnscope_label("${_name}_CANNOT_LIST_ITS_TESTS" "${label}")
      return()
    endif()
    # Suite lines start in the first column and end with '.'; test lines are indented. Either
    # may carry a comment ("Typed/0.  # TypeParam = float", "  Case/1  # GetParam() = 2").
    string(REPLACE ";" "" _out "${_out}")
    string(REPLACE "\n" ";" _lines "${_out}")
    set(_tests "")
    set(_suite "")
    foreach(_line IN LISTS _lines)
      if(_line MATCHES "^([A-Za-z0-9_/]+)\\.")
        set(_suite "${CMAKE_MATCH_1}")
      elseif(NOT _suite STREQUAL "" AND _line MATCHES "^  ([A-Za-z0-9_/]+)")
        list(APPEND _tests "${_suite}.${CMAKE_MATCH_1}")
      endif()
    endforeach()
    file(WRITE "${_list}.tmp" "${_tests}")
    file(RENAME "${_list}.tmp" "${_list}")
  endif()
  file(READ "${_list}" _tests)

  set(_names "")
  foreach(_test IN LISTS _tests)
    string(REGEX REPLACE "\\..*" "" _suite "${_test}")
    list(FIND per_test "${_suite}" _alone)
    if(_alone GREATER -1)
      list(APPEND _names "${_test}")
    else()
      list(APPEND _names "${_suite}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _names)

  foreach(_test IN LISTS _names)
    # ctest needs unique names: a suite name used by two executables fails the run by name.
    get_property(_taken GLOBAL PROPERTY _attnscope_tests)
    list(FIND _taken "${_test}" _at)
    if(_at GREATER -1)
      add_test("${_test}_IS_IN_TWO_TEST_EXECUTABLES" sh -c
               "echo 'rename the suite ${_test} of ${_name}: another test executable has one'; exit 1")
      _attnscope_label("${_test}_IS_IN_TWO_TEST_EXECUTABLES" "${label}")
      continue()
    endif()
    set_property(GLOBAL APPEND PROPERTY _attnscope_tests "${_test}")
    if(_test MATCHES "\\.")
      set(_filter "${_test}")
    else()
      set(_filter "${_test}.*")
    endif()
    add_test("${_test}" "${exe}" "--gtest_filter=${_filter}")
    # Exit status 77: every test of the process skipped itself (tests/support/main.cpp).
    set_tests_properties("${_test}" PROPERTIES ENVIRONMENT "${environment}"
                         SKIP_RETURN_CODE 77)
    # The longest suites first (ctest's order when it has no timings of its own, as in CI's
    # fresh clone, where declaration order started CliFault and TrainCli last): their seconds
    # under `ctest -j2` in a fresh clone on the 2-core VM at 3bec4f2.
    foreach(_cost IN ITEMS CliClassify=175 CliFault=154 TrainCli=135 Distributed=81 CliDemo=74
                           EvaluateCli=74 ImageParity=72 CliReport=44 Cli=37)
      if(_cost MATCHES "^${_test}=([0-9]+)$")
        set_tests_properties("${_test}" PROPERTIES COST "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    set(_labels ${label})
    if(_test MATCHES "^Data")
      list(APPEND _labels data)
    elseif(_test MATCHES "^Gpu")
      list(APPEND _labels gpu)
    endif()
    if(_labels)
      set_tests_properties("${_test}" PROPERTIES LABELS "${_labels}")
    endif()
  endforeach()
endfunction()
