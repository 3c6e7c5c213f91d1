# Runs under the suite's Python 2.7: prints the case ids a spec selects, as the suite does.
import json
import sys

from autobahntestsuite.case import CaseCategories, Cases, CaseSubCategories
from autobahntestsuite.caseset import CaseSet

spec = json.load(open(sys.argv[1]))
print(json.dumps(CaseSet("fuzzing", "Case", Cases, CaseCategories, CaseSubCategories).parseSpecCases(spec)))
