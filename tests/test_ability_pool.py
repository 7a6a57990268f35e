"""The ability stage's VLMs answering side by side, each in a process of its own (one per GPU on a GPU node): the
same answers and scores as one after another."""
import json, os
os.environ['HF_HUB_OFFLINE'] = '1'
from pathlib import Path

from emt.ability import run_ability
from emt.params import load_params
from emt.toy_projects import toy_ability_project

MAIN = Path(__file__).resolve().parents[1]


def test_two_vlms_at_once_answer_as_one_at_a_time(tmp_project):
    P = toy_ability_project(tmp_project, load_params(MAIN/'params.yaml'))
    one = run_ability(P, jobs=1)
    answers_one = (tmp_project/'metrics/ability_answers.csv').read_text()
    two = run_ability(P, jobs=2)
    assert (tmp_project/'metrics/ability_answers.csv').read_text() == answers_one
    assert one['scores'] == two['scores'] and one['table'] == two['table']
    assert json.loads((tmp_project/'metrics/ability.json').read_text())['scores'] == one['scores']
