-- spec/helpers/sets.lua: what the coverage specs compare method lists with.
local sets = require "spec.helpers.sets"

describe("spec.helpers.sets", function()
  it("without: the members of a missing from b and from skip, sorted", function()
    local a = { c = true, a = true, b = true, d = true }
    assert.same({ "a", "c", "d" }, sets.without(a, { b = true }))
    assert.same({ "a", "d" }, sets.without(a, { b = true }, { c = true }))
    assert.same({}, sets.without(a, a))
    assert.same({}, sets.without({}, a))
  end)

  it("count: how many members", function()
    assert.equal(0, sets.count({}))
    assert.equal(3, sets.count({ x = true, y = false, [1] = true }))
  end)
end)
