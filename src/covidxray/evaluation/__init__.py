"""covidxray.evaluation"""
